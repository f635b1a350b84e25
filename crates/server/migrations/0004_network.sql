-- Network access per app (internet egress, off by default).
ALTER TABLE apps ADD COLUMN network TEXT NOT NULL DEFAULT '{}';

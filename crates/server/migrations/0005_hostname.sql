-- Each app's public hostname label, `<app>-<org>`, is unique across orgs: with '-' allowed in
-- both names, org `corp`'s app `api-acme` and org `acme-corp`'s app `api` would share one, and
-- routing would depend on which was created first. An existing clash keeps the label for the
-- older app; the other has no public hostname until it is renamed.
ALTER TABLE apps ADD COLUMN hostname TEXT;
UPDATE apps SET hostname = name || '-' || org
WHERE NOT EXISTS (
    SELECT 1 FROM apps older
    WHERE older.name || '-' || older.org = apps.name || '-' || apps.org
      AND (older.created_at < apps.created_at
           OR (older.created_at = apps.created_at AND older.org < apps.org))
);
CREATE UNIQUE INDEX apps_by_hostname ON apps (hostname);

/**
 * The Deno build's last step on an app's `DENO_DIR` (`deno run seal_cache.ts <dir>`, with a
 * `DENO_DIR` of its own): every SQLite database Deno left there (V8's code cache, the module
 * analysis caches) has its write-ahead log checkpointed into it and closed, so the database
 * file alone holds everything. The builder then leaves an empty `-wal` and `-shm` beside each:
 * SQLite can open a WAL database on a read-only file system (the instance's tree) only if they
 * exist.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";

const dir = Deno.args[0];
if (!dir) {
  console.error("usage: deno run seal_cache.ts <DENO_DIR>");
  Deno.exit(64);
}
const magic = "SQLite format 3\0";
for (const entry of Deno.readDirSync(dir)) {
  if (!entry.isFile || /-(wal|shm|journal)$/.test(entry.name)) continue;
  const path = `${dir}/${entry.name}`;
  const head = new Uint8Array(16);
  const file = Deno.openSync(path);
  const n = file.readSync(head);
  file.close();
  if (n !== 16 || new TextDecoder().decode(head) !== magic) continue;
  const db = new DatabaseSync(path);
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  db.close();
  console.error(`sealed ${entry.name}`);
}

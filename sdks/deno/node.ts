/**
 * For apps that use Node's APIs (the build found a `node:` or `npm:` import): `node:process`'s
 * `process.stdout` writes to stderr too. Imported by the entry right after `prelude.ts`, before
 * the app; other apps do not pay for loading Deno's Node compatibility.
 *
 * @module
 */

import process from "node:process";
import { redirectProcess } from "./prelude.ts";

redirectProcess(process);

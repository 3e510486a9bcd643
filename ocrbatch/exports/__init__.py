"""One table for a whole batch, built from the results it already has: `ocrbatch export`, the
API's `/batches/{ref}/export` and the console's download. `walk` reads results and failure
records in key order, `rows` turns each into rows, `formats` writes CSV, xlsx or JSON Lines, and
`export` ties them together as a stream of bytes."""

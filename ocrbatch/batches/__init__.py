"""Batches: their definition and the console's rules, the catalog in storage, the layout of a
result location, reports, and the upload events that concern them."""

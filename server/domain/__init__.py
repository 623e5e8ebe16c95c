"""The gate's rules with no I/O: what a report may record, the document record."""

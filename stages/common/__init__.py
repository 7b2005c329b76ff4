"""The common base every other layer stands on: the strict job-file model base, object storage, and the
variant's fields (from which the record schema and `params_hash` are derived). Nothing here imports another
part of Rushes."""

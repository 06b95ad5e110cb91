import dagster as dg

# One partition key per dub job; the key is the job id in the job store.
dub_jobs = dg.DynamicPartitionsDefinition(name="dub_jobs")

"""flows: the pipeline chain and the Prefect flows that orchestrate the lafs stages; no science lives here."""

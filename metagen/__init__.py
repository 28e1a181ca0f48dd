"""metagen: the meta-dataset generator (distributions with known MI, transforms, tasks, store)."""

"""Content moves between instances: the relation closure, keys and the ID map, the plan and the writer."""

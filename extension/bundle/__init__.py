"""The bundle format: what an export writes and an import reads (tables, values, snapshots, archives)."""

"""The instance: its .env, its database and its file storage, read as CairnCMS reads them."""

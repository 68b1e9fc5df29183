"""rules.db and state.db: schema, migrations and the queries over them."""

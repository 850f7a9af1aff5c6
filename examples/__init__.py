"""Examples of extending raykd (plugins: modules whose registrations a study's YAML can name)."""

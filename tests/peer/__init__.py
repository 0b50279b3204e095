"""SQLAlchemy's own ORM test suite, run with every SELECT cached (see README.md)."""

"""An exhaustive model of the version protocol (see ARCHITECTURE.md, "Version protocol")."""

"""Running a model whatever its form: the settings every inference entry point takes."""

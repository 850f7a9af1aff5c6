"""What a study measured, turned into results: report tables and figures, statistics, the compare study's
tests and tables, and the export of a chosen student."""

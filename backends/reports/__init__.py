"""Pictures and reports for people: layout SVG, HTML report, tensor tables."""

"""Reporting: tables and figures of the report, and the paper's numbers with the verdicts beside ours."""

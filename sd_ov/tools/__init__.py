"""The command line (`python -m sd_ov`), the demo and its chart.

Imports: every part.
"""

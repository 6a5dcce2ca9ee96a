"""Reporting: leaderboards in every format, energy figures and the HTML report."""

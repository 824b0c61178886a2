"""Forges that register CI runners: GitHub (github.py); room for GitLab."""

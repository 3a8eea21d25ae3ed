"""Governance: audit log, explanations, bias audits, drift checks and compliance reports."""

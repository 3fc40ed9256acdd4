"""PHI scanner: indicators of health information in text, the risk they add up to, and the security-mode decision."""

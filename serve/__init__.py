"""mathray's Ray Serve application (the model and a verifier behind one endpoint).

Not built yet: see the Serve issue. Nothing in this package is imported by the other jobs.
"""

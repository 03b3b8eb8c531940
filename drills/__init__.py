"""Fault drills: each starts a throwaway stack, breaks one thing under load and asserts what must hold."""

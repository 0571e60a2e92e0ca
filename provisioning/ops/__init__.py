"""Operations: the op registry and the ops shipped with the package.

An op is a program run once per task through the task protocol (DESIGN.md 6).
"""

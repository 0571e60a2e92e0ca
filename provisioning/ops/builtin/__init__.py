"""Built-in ops (`noop`, `shell.run`): plain scripts run by file path.

They import nothing from the package and nothing heavy, so a task that uses
them costs little more than starting the interpreter.
"""

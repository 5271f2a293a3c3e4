"""PyInstaller runtime hook: clean the environment before anything else runs (NW-5).

Custom runtime hooks run before PyInstaller's own (``pyi_rth_pyside6`` imports
``PySide6.QtCore``), so this is the earliest Python code in the frozen app. The entry script
(``packaging/gatehouse_main.py``) cleans again after the other hooks, with the same list.
"""

from client.launch_environment import harden_frozen_process

harden_frozen_process()

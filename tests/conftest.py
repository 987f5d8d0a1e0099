import os
import sys

# helpers shared by the tests (official_layout) import as top-level modules
sys.path.insert(0, os.path.dirname(__file__))

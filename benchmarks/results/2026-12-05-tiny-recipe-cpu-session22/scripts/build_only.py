import sys
from pathlib import Path
from smollm3.recipe.build import build_data
from smollm3.recipe.spec import find_recipe, load_recipe
r = load_recipe(find_recipe("tiny"))
build_data(Path(sys.argv[1]), r["build"], log=lambda *a: None)

"""Every YAML config (training, recipe, merge) is read by one function: a missing file, bad YAML or a top level that is
not a mapping is one line naming the file and the fix, in the caller's own error class."""

import pytest

from smollm3.config import ConfigError
from smollm3.merge import MergeError, read_merge_config
from smollm3.recipe.spec import RecipeError, load_recipe
from smollm3.train.config import load_train_config
from smollm3.yaml_file import read_yaml_mapping


def test_a_mapping_is_read_and_an_empty_file_is_empty(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {steps: 3}\n")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "a.yaml", "config file", "sections") == {"train": {"steps": 3}}
    assert read_yaml_mapping(tmp_path / "empty.yaml", "config file", "sections") == {}


def test_missing_file_and_directory_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such config file$"):
        read_yaml_mapping(tmp_path / "nope.yaml", "config file", "sections")
    with pytest.raises(FileNotFoundError, match="that is a directory; give the YAML file in it"):
        read_yaml_mapping(tmp_path, "recipe", "stages")


@pytest.mark.parametrize("load, error", [(load_train_config, ConfigError), (read_merge_config, MergeError),
                                         (load_recipe, RecipeError)])
def test_bad_yaml_is_one_line_with_where_in_the_callers_class(tmp_path, load, error):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - model: a\n bad: [\n")
    with pytest.raises(error) as e:
        load(bad)
    message = str(e.value)
    assert message.startswith(f"{bad}: not valid YAML (") and "line 3" in message and "fix the syntax" in message
    assert "\n" not in message


@pytest.mark.parametrize("load, error, expected", [
    (load_train_config, ConfigError, "sections such as model:"), (read_merge_config, MergeError, "`models:`"),
    (load_recipe, RecipeError, "`stages:`")])
def test_a_top_level_list_says_what_the_mapping_holds(tmp_path, load, error, expected):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(error, match=f"list.yaml: the top level must be a mapping \\(.*{expected}.*\\), got a list"):
        load(path)

import pytest

from omnivec.tasks import TaskSpec, resolve_task, resolve_tasks


@pytest.mark.parametrize("name,expected", [
    ("retrieval.query", TaskSpec("retrieval", "query")),
    ("retrieval.passage", TaskSpec("retrieval", "passage")),
    ("text-matching", TaskSpec("text-matching", "query")),
    ("code.query", TaskSpec("code", "query")),
    ("code.passage", TaskSpec("code", "passage")),
])
def test_api_names(name, expected):
    assert resolve_task(name) == expected


def test_reference_pairs_and_text_matching_is_always_query():
    assert resolve_task("retrieval") == TaskSpec("retrieval", "query")
    assert resolve_task("code", "passage") == TaskSpec("code", "passage")
    assert resolve_task("text-matching", "passage") == TaskSpec("text-matching", "query")


def test_errors_name_the_bad_value_and_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown task 'search'.*retrieval\.query"):
        resolve_task("search")
    with pytest.raises(ValueError, match="prompt_name"):
        resolve_task("retrieval", "document")
    with pytest.raises(ValueError, match="2 entries but there are 3"):
        resolve_tasks(["retrieval.query", "code.query"], 3)
    with pytest.raises(ValueError, match="string"):
        resolve_task(3)


def test_per_item_tasks():
    specs = resolve_tasks(["retrieval.query", "code.passage"], 2)
    assert [s.api_name for s in specs] == ["retrieval.query", "code.passage"]

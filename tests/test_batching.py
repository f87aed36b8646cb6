from omnivec.batching import plan_batches


def test_longest_first_and_budget_respected():
    costs = [5, 100, 7, 100, 3, 60]
    batches = plan_batches(costs, max_tokens=210, max_rows=8)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(costs)))
    assert batches[0][:2] == [1, 3]
    for b in batches:
        assert len(b) == 1 or max(costs[i] for i in b) * len(b) <= 210


def test_oversized_item_gets_own_batch_and_rows_cap():
    assert plan_batches([1000, 1, 1], max_tokens=10, max_rows=8) == [[0], [1, 2]]
    assert plan_batches([1] * 5, max_tokens=100, max_rows=2) == [[0, 1], [2, 3], [4]]


def test_packed_budget_sums_costs():
    assert plan_batches([6, 5, 4], max_tokens=10, max_rows=8, padded=False) == [[0], [1, 2]]

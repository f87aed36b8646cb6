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


def _modelled(batches, costs, overhead):
    return sum(overhead + len(b) * max(costs[i] for i in b) for b in batches)


def test_overhead_aware_plan_cuts_at_length_jumps():
    # greedy pads the three short rows up to 60 (4 x 60 = 240 fits); cutting costs one more call
    costs = [60, 10, 10, 10]
    assert plan_batches(costs, max_tokens=256, max_rows=16) == [[0, 1, 2, 3]]
    assert plan_batches(costs, max_tokens=256, max_rows=16, overhead_tokens=36) == [[0], [1, 2, 3]]
    # when a call costs more than the padding it saves, rows stay together
    assert plan_batches([12, 10, 10], max_tokens=256, max_rows=16, overhead_tokens=36) == [[0, 1, 2]]


def test_overhead_aware_plan_is_no_worse_than_greedy_and_keeps_limits():
    import random
    rng = random.Random(0)
    for _ in range(200):
        costs = [rng.randint(1, 120) for _ in range(rng.randint(1, 60))]
        dp = plan_batches(costs, max_tokens=512, max_rows=8, overhead_tokens=36)
        greedy = plan_batches(costs, max_tokens=512, max_rows=8)
        assert sorted(i for b in dp for i in b) == list(range(len(costs)))
        for b in dp:
            assert len(b) <= 8 and (len(b) == 1 or len(b) * max(costs[i] for i in b) <= 512)
        assert _modelled(dp, costs, 36) <= _modelled(greedy, costs, 36)
        assert max(costs[i] for i in dp[0]) == max(costs)          # longest rows still go first
    assert plan_batches([1000, 1, 1], max_tokens=10, max_rows=8, overhead_tokens=36) == [[0], [1, 2]]

"""The store's set-based paths (README "At scale"): keyset pages and the reaper's one-UPDATE passes."""

from __future__ import annotations

from core.store import jobs, leases, transaction

SPEC = {"model": "Toy", "layer": "Sandwich", "epochs": 3}


def _make(store, n, tenant="pages"):
    with transaction(store) as s:
        return [jobs.create_job(s, tenant=tenant, kind="train", spec=SPEC)[0].id for _ in range(n)]


def test_keyset_pages_list_every_job_once_while_jobs_arrive(store):
    made = _make(store, 120)
    _make(store, 5, tenant="elsewhere")
    seen, cursor = [], None
    while True:
        with transaction(store) as s:
            page = jobs.list_jobs(s, "pages", limit=50, before_pk=cursor)
        seen += [j.id for j in page]
        if len(page) < 50:
            break
        cursor = page[-1].pk
        _make(store, 1)  # a job made between pages goes on the first page, not on later ones
    assert seen == made[::-1]


def test_one_reaper_pass_recovers_many_expired_leases_each_once(store):
    ids = _make(store, 30, tenant="reaped")
    with transaction(store) as s:
        for i, job_id in enumerate(ids):
            leases.acquire(s, job_id, "w1", lease_s=-1)
            if i % 3 == 1:
                jobs.request_cancel(s, jobs.get_job(s, None, job_id))
    with transaction(store) as s:
        resend = leases.reap(s, max_attempts=2, resend_queued_after_s=600)
    with transaction(store) as s:
        again = leases.reap(s, max_attempts=2, resend_queued_after_s=600)
        rows = {j: jobs.get_job(s, None, j) for j in ids}
        events = {j: [(e.seq, e.data) for e in jobs.events_after(s, j)] for j in ids}
    assert again == []
    assert sorted(r.job_id for r in resend) == sorted(j for i, j in enumerate(ids) if i % 3 != 1)
    for i, job_id in enumerate(ids):
        want = "cancelled" if i % 3 == 1 else "queued"
        assert rows[job_id].status == want and rows[job_id].lease_owner is None
        seqs = [seq for seq, _ in events[job_id]]
        assert seqs == list(range(1, len(seqs) + 1)) and events[job_id][-1][1]["status"] == want

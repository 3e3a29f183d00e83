"""Drives the official StateBase Python SDK (statebase==0.4.1), sync and async clients,
through every method against a real statebase-http server.

Usage: STATEBASE_URL=http://127.0.0.1:PORT STATEBASE_API_KEY=sb_... python3 sdk_check.py
Prints one line per check and a closing "N passed, N failed" line; exits non-zero on failure.
"""
import asyncio
import os
import sys
import traceback

import httpx
from statebase import AsyncStateBase, StateBase

URL = os.environ["STATEBASE_URL"]
KEY = os.environ["STATEBASE_API_KEY"]
results = {"passed": 0, "failed": 0}


def check(name, fn):
    try:
        fn()
        results["passed"] += 1
        print(f"ok   {name}")
    except Exception:  # noqa: BLE001 - report every failure and go on
        results["failed"] += 1
        print(f"FAIL {name}")
        traceback.print_exc()


def sync_client():
    sb = StateBase(api_key=KEY, base_url=URL)
    state = {}

    def health():
        assert sb.health()["status"] == "healthy"

    def create():
        s = sb.sessions.create(agent_id="sdk-sync", user_id="u1", metadata={"k": "v"},
                               initial_state={"step": 0}, ttl_seconds=3600)
        assert s.id.startswith("sess_") and s.state == {"step": 0} and s.user_id == "u1"
        state["id"] = s.id

    def get():
        s = sb.sessions.get(state["id"])
        assert s.agent_id == "sdk-sync" and s.metadata == {"k": "v"}

    def list_():
        page = sb.sessions.list(agent_id="sdk-sync", limit=10)
        assert [x["id"] for x in page["data"]] == [state["id"]]
        assert page["has_more"] is False

    def update_state():
        r = sb.sessions.update_state(state["id"], {"step": 1, "topic": "billing"}, reasoning="moved on")
        assert r.version == 1 and r.state == {"step": 1, "topic": "billing"}
        r = sb.sessions.update_state(state["id"], {"topic": None})
        assert r.version == 2 and r.state == {"step": 1}

    def get_state():
        r = sb.sessions.get_state(state["id"])
        assert r.version == 2 and r.session_id == state["id"]

    def rollback():
        r = sb.sessions.rollback(state["id"], version=0)
        assert r.version == 3 and r.state == {"step": 0}
        r = sb.sessions.rollback(state["id"], version=-1)
        assert r.version == 4 and r.state == {"step": 1}

    def fork():
        f = sb.sessions.fork(state["id"], version=1)
        assert f.id != state["id"] and f.state == {"step": 1, "topic": "billing"}
        assert f.metadata["forked_from"] == state["id"]
        latest = sb.sessions.fork(state["id"])
        assert latest.state == {"step": 1}

    def add_turn():
        t = sb.sessions.add_turn(state["id"], input="hi", output="hello", metadata={"model": "m"},
                                 reasoning="greeting")
        assert t.turn_number == 1 and t.input.content == "hi" and t.input.type == "text"

    def add_tool_call():
        t = sb.sessions.add_tool_call(state["id"], tool_name="weather", arguments={"city": "Oslo"},
                                      output={"temp": 21}, tool_call_id="call_1")
        assert t.turn_number == 2 and t.input.type == "tool_call"

    def list_turns():
        turns = sb.sessions.list_turns(state["id"], limit=10)
        assert [t.turn_number for t in turns] == [2, 1]

    def memory_add_and_search():
        m = sb.memory.add(content="The user prefers dark mode", session_id=state["id"],
                          tags=["ui"], metadata={"source": "chat"})
        assert m.id.startswith("mem_") and m.type == "fact" and m.session_id == state["id"]
        hits = sb.memory.search("dark mode", session_id=state["id"], types="fact", tags="ui")
        assert [h.id for h in hits] == [m.id] and hits[0].score >= 0.7
        # By meaning, at the SDK's default threshold: no word in common with the memory.
        cats = sb.memory.add(content="Has two cats named Miso and Tofu", session_id=state["id"])
        hits = sb.memory.search("Does the client own any pets?", session_id=state["id"])
        assert hits and hits[0].id == cats.id, hits

    def context():
        c = sb.sessions.get_context(state["id"], query="dark mode preference", memory_limit=3, turn_limit=1)
        assert c["state"] == {"step": 1}
        assert c["memories"][0]["content"] == "The user prefers dark mode"
        assert len(c["recent_turns"]) == 1 and "drift_warning" in c and "average_relevance" in c

    def delete():
        sb.sessions.delete(state["id"])
        try:
            sb.sessions.get(state["id"])
            raise AssertionError("deleted session still readable")
        except httpx.HTTPStatusError as e:
            assert e.response.status_code == 404
            assert e.response.json()["error"]["code"] == "session_not_found"

    for name, fn in [("sync health", health), ("sync sessions.create", create), ("sync sessions.get", get),
                     ("sync sessions.list", list_), ("sync sessions.update_state", update_state),
                     ("sync sessions.get_state", get_state), ("sync sessions.rollback", rollback),
                     ("sync sessions.fork", fork), ("sync sessions.add_turn", add_turn),
                     ("sync sessions.add_tool_call", add_tool_call), ("sync sessions.list_turns", list_turns),
                     ("sync memory.add + search", memory_add_and_search), ("sync sessions.get_context", context),
                     ("sync sessions.delete", delete)]:
        check(name, fn)
    sb.close()


async def async_client():
    async with AsyncStateBase(api_key=KEY, base_url=URL) as sb:
        steps = []

        async def run(name, coro_fn):
            try:
                await coro_fn()
                results["passed"] += 1
                print(f"ok   {name}")
            except Exception:  # noqa: BLE001
                results["failed"] += 1
                print(f"FAIL {name}")
                traceback.print_exc()

        state = {}

        async def health():
            assert (await sb.health())["status"] == "healthy"

        async def create():
            s = await sb.sessions.create(agent_id="sdk-async", initial_state={"n": 0})
            state["id"] = s.id
            assert (await sb.sessions.get(s.id)).state == {"n": 0}
            page = await sb.sessions.list(agent_id="sdk-async")
            assert [x["id"] for x in page["data"]] == [s.id]

        async def state_ops():
            r = await sb.sessions.update_state(state["id"], {"n": 1})
            assert r.version == 1
            assert (await sb.sessions.get_state(state["id"])).state == {"n": 1}
            r = await sb.sessions.rollback(state["id"], version=0)
            assert r.state == {"n": 0} and r.version == 2
            f = await sb.sessions.fork(state["id"], version=1)
            assert f.state == {"n": 1}

        async def turns():
            await sb.sessions.add_turn(state["id"], input="a", output="b")
            await sb.sessions.add_tool_call(state["id"], tool_name="t", arguments={}, output="done")
            assert [t.turn_number for t in await sb.sessions.list_turns(state["id"])] == [2, 1]

        async def memory():
            m = await sb.memory.add(content="Allergic to peanuts", session_id=state["id"], tags=["health"])
            hits = await sb.memory.search("peanuts allergy", session_id=state["id"], tags=["health"], threshold=0.3)
            assert hits and hits[0].id == m.id
            c = await sb.sessions.get_context(state["id"], query="allergic to peanuts")
            assert c["memories"][0]["id"] == m.id

        async def delete():
            await sb.sessions.delete(state["id"])

        for name, fn in [("async health", health), ("async sessions.create/get/list", create),
                         ("async state update/get/rollback/fork", state_ops),
                         ("async add_turn/add_tool_call/list_turns", turns),
                         ("async memory.add/search + get_context", memory), ("async sessions.delete", delete)]:
            await run(name, fn)


sync_client()
asyncio.run(async_client())
print(f"sdk: {results['passed']} passed, {results['failed']} failed")
sys.exit(1 if results["failed"] else 0)

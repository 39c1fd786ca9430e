"""Search in the ``Store`` contract on both backends (words, prefixes, accents, edits,
deletes, paging, several groups), the words a message is found by, and the Mongo
query behind it: an index range per group, never a collection scan."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import regex
from bson import ObjectId
from pymongo import AsyncMongoClient

from storage import mongo_search, search_words
from storage.base import Store, now_ms
from storage.memory import MemoryStore
from storage.memory_search import WordIndex
from storage.mongo import MongoStore
from storage.mongo_documents import WORDS_INDEX
from storage.mongo_search import FIRST_WINDOW, WordsBackfill, lead_filter, prefix_filter
from storage.search_words import QueryError, message_words, parse_query
from tests.support.mongo import seed_mongo
from tests.test_store_contract import (
    ALGEBRA,
    ALICE,
    BOB,
    GROUPS,
    USERS,
    ZOOLOGY,
    _explain_facts,
    send,
    store,
)

STUDY = [
    "¿Alguien resolvió las derivadas parciales del ejercicio 3?",
    "The derivative of x squared is 2x",
    "Resolví el 4 con la regla de la cadena",
    "Nos vemos mañana en la BIBLIOTECA a las 10",
    "Here is the link to the notes from last week: https://example.edu/notes",
]


async def search(store: Store, text: str, groups: tuple[str, ...] = (ZOOLOGY,), *, limit: int = 20,
                 before_seq: int | None = None) -> tuple[list[str], bool]:
    found, more = await store.search_messages(list(groups), parse_query(text), limit=limit, before_seq=before_seq)
    return [m["content"] for m in found], more


# -- the words --


def test_words_are_folded_and_broken_by_unicode_rules() -> None:
    assert message_words("¿Alguien RESOLVIÓ las Derivadas?") == ["alguien", "resolvio", "las", "derivadas"]
    assert message_words("Straße ﬁnal café CAFÉ") == ["strasse", "final", "cafe"]
    # A word with inner punctuation is stored whole and in parts.
    assert message_words("don't 3.14 notes@uni.edu") == [
        "dont", "don", "t", "314", "3", "14", "notes", "uniedu", "uni", "edu"]
    # Scripts written without spaces break into characters.
    assert message_words("数学の問題") == ["数", "学", "の", "問", "題"]
    assert message_words("!!! ... ---") == []
    assert len(message_words(" ".join(f"w{i}" for i in range(2000)))) == search_words.MAX_MESSAGE_WORDS
    assert message_words("x" * 500) == ["x" * search_words.MAX_WORD_LENGTH]



_LETTERS_AND_DIGITS = regex.compile(r"[\p{L}\p{N}]+")


def _words_by_the_rules(text: str) -> list[list[str]]:
    """The definition the store's shortcuts are held to: each UAX #29 word (the ``regex``
    package's boundaries), folded, as its runs of letters and digits."""
    found = []
    for segment in search_words._BOUNDARIES.split(text):
        runs = [run[:search_words.MAX_WORD_LENGTH] for run in _LETTERS_AND_DIGITS.findall(search_words.fold(segment))]
        if runs:
            found.append(runs)
    return found


def test_ascii_text_breaks_into_the_same_words_as_the_unicode_rules() -> None:
    """The ASCII shortcut against the ``regex`` package's word boundaries: random ASCII
    strings over the characters the rules treat specially, and over all 128."""
    rng = random.Random(29)
    special = "aZ09_.:,;'\" -\n\r\t!?@#$%&*()[]{}/\\<>=+~`^|"
    every = [chr(i) for i in range(128)]
    for alphabet, longest in ((special, 14), (every, 40)):
        for _ in range(20_000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))
            assert search_words._ascii_words(text) == _words_by_the_rules(text), repr(text)
    prose = "Does anyone have notes on Ch. 3? e.g. the 3.14, 1,000 & don't-miss items: see x:y_z @ 9:30am."
    assert search_words._ascii_words(prose) == _words_by_the_rules(prose)


def _stored_words(found: list[list[str]], most: int) -> list[str]:
    """What a message stores of its words by the definition: each whole word, then its
    runs when it has several, distinct, in order, the first ``most``."""
    words: dict[str, None] = {}
    for runs in found:
        whole = "".join(runs)[:search_words.MAX_WORD_LENGTH]
        words.update(dict.fromkeys([whole, *runs] if len(runs) > 1 else [whole]))
    return list(words)[:most]


def test_a_messages_stored_words_follow_the_rules_for_ascii_and_for_any_text(monkeypatch) -> None:
    """``message_words`` (ASCII text takes a one-pass shortcut) against the definition, on
    random ASCII and mixed-script strings, with files' names, and past the cap of words."""
    monkeypatch.setattr(search_words, "MAX_MESSAGE_WORDS", 6)
    rng = random.Random(7)
    ascii_alphabet = "aZ09_.:,;'\" -\n!?@"
    mixed = list(ascii_alphabet) + list("áÑçßﬁ½ΣПри数学") + ["e\u0301", "\u00a0"]
    for alphabet in (ascii_alphabet, mixed):
        for _ in range(10_000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            names = [{"name": "".join(rng.choice(alphabet) for _ in range(5))} for _ in range(rng.randint(0, 2))]
            whole = "\n".join([text, *(n["name"] for n in names)])
            assert message_words(text, names) == _stored_words(_words_by_the_rules(whole), 6), repr(whole)


def test_any_text_breaks_into_the_words_of_the_unicode_rules() -> None:
    """The whole path (its shortcuts for segments that fold to ASCII included) against the
    rules, on random strings mixing ASCII with accented and decomposed Latin, ligatures, Greek,
    Cyrillic, CJK, Arabic, combining marks, other digits and fractions, and punctuation."""
    rng = random.Random(2029)
    alphabet = list("aZ09_.:,;'\" -\n!?@") + list("áéíóúñÑçÇüÜàèßẞ") + ["e\u0301", "n\u0303", "\u0301"] \
        + list("ﬁﬂǆǅ½²³٣۴०") + list("ΑβΣσςПриветЁё") + list("数学の問題明天见") + list("مرحبا") \
        + list("¿¡«»—–…·•’‘“”") + ["\u200b", "\u00a0", "\u3000"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert search_words._words(text) == _words_by_the_rules(text), repr(text)
    prose = "¿Alguien RESOLVIÓ el ejercicio 3.2? Straße, ﬁnal, café; 数学の問題 — ½ de 2³, l'été."
    assert search_words._words(prose) == _words_by_the_rules(prose)

def test_a_query_is_exact_words_and_a_last_prefix() -> None:
    query = parse_query("  Resolvió  las DERIV")
    assert (query.exact, query.prefix) == (("resolvio", "las"), "deriv")
    assert query.matches({"resolvio", "las", "derivadas"}) and not query.matches({"resolvio", "derivadas"})
    for bad in ("", "   ", "¿?!", " ".join(["a"] * 11)):
        with pytest.raises(QueryError):
            parse_query(bad)
    assert parse_query(" ".join(["a"] * 10)).prefix == "a"


# -- the store contract --


def test_the_embedded_index_keeps_a_word_through_every_change_of_its_messages() -> None:
    """A word's seqs go from one message to several and back as messages are added,
    edited and deleted; search and prefixes see each state."""
    index = WordIndex()
    query = parse_query("calc")  # a prefix
    exact = parse_query("calculus rules")
    index.update(1, ["calculus"])
    assert index.search(query, limit=10, before_seq=None) == ([1], False)
    index.update(2, ["calculus", "rules"])
    index.update(3, ["calculator"])
    assert index.search(query, limit=10, before_seq=None) == ([3, 2, 1], False)
    assert index.search(exact, limit=10, before_seq=None) == ([2], False)
    index.update(1, [])  # deleted
    assert index.search(query, limit=1, before_seq=None) == ([3], True)
    index.update(2, ["rules"])  # edited: "calculus" is left in no message
    assert index.search(query, limit=10, before_seq=None) == ([3], False)
    assert index.search(exact, limit=10, before_seq=None) == ([], False)
    index.update(3, [])
    assert index.search(query, limit=10, before_seq=None) == ([], False)
    index.update(4, ["calculus"])
    assert index.search(parse_query("calculus"), limit=10, before_seq=None) == ([4], False)
    # Seqs that arrive out of order, and a message with no words that gains some.
    index.update(9, ["calculus"])
    index.update(7, ["calculus"])
    index.update(5, [])
    index.update(8, ["calculus"])
    index.update(5, ["calculus"])
    assert index.search(parse_query("calculus"), limit=10, before_seq=None) == ([9, 8, 7, 5, 4], False)
    assert index.search(query, limit=10, before_seq=8) == ([7, 5, 4], False)


async def test_the_embedded_store_files_a_new_messages_words_after_the_send(monkeypatch) -> None:
    """Breaking a new message into words and filing them is not in the way of its
    broadcast: the embedded store does it at the end of the loop iteration. A search, an
    edit or a deletion before then files what waits first, so it sees every stored
    message, in the order the changes were made."""
    broken: list[str] = []

    def counted(content: str, attachments: Any = ()) -> list[str]:
        broken.append(content)
        return message_words(content, attachments)

    monkeypatch.setattr("storage.memory_search.message_words", counted)
    memory = MemoryStore()
    memory.add_group(ZOOLOGY, "Zoology", [ALICE, BOB])
    first = await send(memory, ALICE, "the zebra sleeps")
    assert broken == []  # not while the send is answered
    await asyncio.sleep(0)
    assert broken == ["the zebra sleeps"]  # at the end of the iteration
    # Within one iteration: found at once, and an edit or a deletion right after the send
    # applies after it.
    await send(memory, BOB, "a zebra runs")
    assert (await search(memory, "zebra"))[0] == ["a zebra runs", "the zebra sleeps"]
    third = await send(memory, ALICE, "an okapi hides")
    await memory.edit_message(ZOOLOGY, third["id"], ALICE, "an okapi eats")
    fourth = await send(memory, BOB, "a quagga grazes")
    await memory.delete_message(ZOOLOGY, fourth["id"], BOB)
    assert (await search(memory, "hides"))[0] == []
    assert (await search(memory, "eats"))[0] == ["an okapi eats"]
    assert (await search(memory, "quagga"))[0] == []
    await memory.delete_message(ZOOLOGY, first["id"], ALICE)
    await asyncio.sleep(0)
    assert (await search(memory, "zebra"))[0] == ["a zebra runs"]


async def test_spanish_and_english_are_found_without_case_or_accents(store: Store) -> None:
    for i, text in enumerate(STUDY):
        await send(store, (ALICE, BOB)[i % 2], text)
    assert (await search(store, "resolvio"))[0] == [STUDY[0]]
    assert (await search(store, "RESOLVÍ"))[0] == [STUDY[2], STUDY[0]]  # a prefix of "resolvio" too; newest first
    assert (await search(store, "deriv"))[0] == [STUDY[1], STUDY[0]]
    assert (await search(store, "manana biblio"))[0] == [STUDY[3]]
    assert (await search(store, "notes last week"))[0] == [STUDY[4]]
    assert (await search(store, "example.edu"))[0] == [STUDY[4]]
    # Every word must be there; only the last one is a prefix.
    assert (await search(store, "deriv las"))[0] == []
    assert (await search(store, "las deriv"))[0] == [STUDY[0]]
    assert (await search(store, "quimica"))[0] == []


async def test_edits_are_reindexed_and_deleted_messages_never_match(store: Store) -> None:
    first = await send(store, ALICE, "Las derivadas son fáciles")
    second = await send(store, BOB, "Las integrales también")
    edited = await store.edit_message(ZOOLOGY, first["id"], ALICE, "Las series convergen")
    assert edited is not None
    assert (await search(store, "deriv"))[0] == []
    assert (await search(store, "converg"))[0] == ["Las series convergen"]
    assert (await search(store, "las"))[0] == ["Las integrales también", "Las series convergen"]
    await store.delete_message(ZOOLOGY, second["id"], BOB)
    await store.delete_message(ZOOLOGY, first["id"], None, deleted_by=BOB)  # a moderator's
    assert await search(store, "las") == ([], False)
    assert await search(store, "integrales") == ([], False)


async def test_results_page_newest_first_with_before_seq(store: Store) -> None:
    sent = [await send(store, ALICE, f"tarea {i}" if i % 2 else "otra cosa") for i in range(1, 12)]
    tareas = [m for m in sent if m["content"].startswith("tarea")]
    page, more = await store.search_messages([ZOOLOGY], parse_query("tarea"), limit=4)
    assert [m["seq"] for m in page] == [m["seq"] for m in reversed(tareas)][:4] and more
    assert page[0] == await store.get_message(ZOOLOGY, page[0]["id"])  # the whole message object
    rest, more = await store.search_messages([ZOOLOGY], parse_query("tarea"), limit=4, before_seq=page[-1]["seq"])
    assert [m["seq"] for m in rest] == [m["seq"] for m in reversed(tareas)][4:] and not more


async def test_several_groups_are_searched_newest_first(store: Store) -> None:
    await send(store, ALICE, "examen zoología", group=ZOOLOGY)
    await send(store, ALICE, "examen álgebra", group=ALGEBRA)
    await send(store, BOB, "examen zoología otra vez", group=ZOOLOGY)
    assert (await search(store, "examen", (ZOOLOGY, ALGEBRA)))[0] == [
        "examen zoología otra vez", "examen álgebra", "examen zoología"]
    assert await search(store, "examen", (ZOOLOGY, ALGEBRA), limit=2) == (
        ["examen zoología otra vez", "examen álgebra"], True)
    assert (await search(store, "examen", (ALGEBRA,)))[0] == ["examen álgebra"]


# -- Mongo --


async def test_a_search_reads_index_windows_of_the_group_not_the_collection(
    mongo_uri: str, mongo_db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    store = MongoStore(mongo_uri, mongo_db_name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    await store.open()
    try:
        total = FIRST_WINDOW * 2 + 100
        gid = ObjectId(ZOOLOGY)
        docs = []
        for seq in range(1, total + 1):
            text = f"las derivadas parciales {seq}" if seq % 500 == 0 else f"notes de relleno {seq}"
            docs.append({"_id": ObjectId(), "group_id": gid, "seq": seq, "rev": seq, "revs": [seq], "kind": "message",
                         "sender_id": ObjectId(ALICE), "sender": "A", "content": text, "words": message_words(text),
                         "timestamp": now_ms(), "client_msg_id": None, "edited_at": None, "deleted": False})
        messages = client[mongo_db_name].messages
        await messages.insert_many(docs)
        assert (await search(store, "las deriv"))[0] == [f"las derivadas parciales {s}" for s in (1000, 500)]
        newest = [f"notes de relleno {s}" for s in range(total, total - 7, -1)]
        assert await search(store, "notes", limit=5) == (newest[:5], True)
        assert await search(store, "relle", limit=5, before_seq=total - 1) == (newest[2:7], True)
        # A rare prefix: past the walk of the newest messages, the older ones holding it.
        monkeypatch.setattr(mongo_search, "NEWEST_READ_PER_RESULT", 3)
        assert (await search(store, "deriv"))[0] == [f"las derivadas parciales {s}" for s in (1000, 500)]
        assert (await search(store, "deriv", before_seq=1000))[0] == ["las derivadas parciales 500"]
        # MongoDB proper reads a lone prefix through windows of an element range
        # ($elemMatch): the same answers (SecantusDB answers it too, by a scan).
        monkeypatch.setattr(store, "_element_ranges", True)
        assert (await search(store, "deriv"))[0] == [f"las derivadas parciales {s}" for s in (1000, 500)]
        assert await search(store, "notes", limit=5) == (newest[:5], True)
        top = total + 1
        # What one search reads: one index window of its longest exact word, or (the
        # query being one word, on SecantusDB) the range of words its prefix starts.
        element_ranges = "secantusVersion" not in await client.admin.command("buildInfo")
        for text, low, most in (("parciales", 1, 2), ("las deriv", 1, 2), ("deriv", 1, 2), ("derivadas", 1, 2),
                                ("relleno notes", top - FIRST_WINDOW, FIRST_WINDOW)):
            query = parse_query(text)
            selector = lead_filter(gid, query, low, top)
            if not query.exact and not element_ranges:
                selector = prefix_filter(gid, query)
            stages, indexes, keys, read = _explain_facts(await messages.find(selector).explain())
            assert "COLLSCAN" not in stages and indexes == {WORDS_INDEX}, (text, stages, indexes)
            assert keys <= most and read <= most, (text, keys, read)
    finally:
        await store.close()
        await client.close()


async def test_messages_stored_before_search_get_their_words(mongo_uri: str, mongo_db_name: str) -> None:
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    store = MongoStore(mongo_uri, mongo_db_name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    await store.open()
    try:
        live = await send(store, ALICE, "Apuntes de la semana pasada")
        db = client[mongo_db_name]
        older = [{"_id": ObjectId(), "group_id": ObjectId(ZOOLOGY), "seq": live["seq"] + i, "sender_id": ObjectId(BOB),
                  "sender": "B", "content": f"apuntes viejos {i}", "deleted": False, "client_msg_id": None,
                  "edited_at": None, "timestamp": now_ms()} for i in (1, 2)]
        await db.messages.insert_many(older)
        assert (await search(store, "apuntes"))[0] == ["Apuntes de la semana pasada"]
        assert await WordsBackfill(db).run() == 2
        assert (await search(store, "apuntes"))[0] == ["apuntes viejos 2", "apuntes viejos 1", "Apuntes de la semana pasada"]
        # Written later by a server that does not know search (a rolling upgrade): the next run finds it.
        await db.messages.insert_one({**older[0], "_id": ObjectId(), "seq": live["seq"] + 3, "content": "apuntes nuevos"})
        assert await WordsBackfill(db).run() == 1
        assert await WordsBackfill(db).run() == 0
        assert (await search(store, "apuntes nuevos"))[0] == ["apuntes nuevos"]
    finally:
        await store.close()
        await client.close()

"""The serving state and its operations, free of FastAPI: model, catalogue, KG, cold-item store.

Every read and write of this state happens on one thread per process (the event loop: the
routes are ``async`` and only the slow text-tower call runs in a worker thread), so requests see
consistent arrays without locks. Several worker processes share registered items through the
store file, which each request polls (:meth:`Service.sync`).

Errors name the request field at fault (``loc``); the web layer maps them to HTTP statuses.
Histories are never stored or logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

import kg
from kg.coldstart import DEFAULT_MAX_NEIGHBOURS
from kg.explainer import PathExplainer
from kg.graph import item_node
from kg.schema import display_title
from server.api.settings import Settings
from server.api.store import ColdItemStore, StoreError
from shared.checkpoint import load_checkpoint
from shared.data import Catalogue, Item, load_dataset
from shared.serving import ServingModel

log = logging.getLogger(__name__)

Loc = tuple[str | int, ...]


class InputError(ValueError):
    """A request value is invalid; ``loc`` names the field (as in FastAPI's validation errors)."""

    kind = "value_error"

    def __init__(self, loc: Loc, message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{'.'.join(map(str, loc))}: {message}")


class UnknownIdError(InputError):
    """A request names an item id the service does not know (or cannot score)."""

    kind = "unknown_item"


class ConflictError(InputError):
    """The request is well-formed but refused in the service's state (e.g. deleting a catalogue item)."""

    kind = "conflict"


class StartupError(RuntimeError):
    """The service cannot start: checkpoint, catalogue, KG or store are missing or inconsistent."""


@dataclass(frozen=True)
class NewItem:
    """A cold-start item to register (validated by the schema; re-checked here against the data)."""

    title: str
    year: int | None
    genres: list[str]
    text: str
    entities: dict[str, list[str]]

    def catalogue_item(self, item_id: int) -> Item:
        return Item(
            item_id, self.title, self.year, list(self.genres), self.text, {r: list(v) for r, v in self.entities.items()}
        )


@dataclass(frozen=True)
class Scored:
    """One ranked item, with its explanation when asked for."""

    item: Item
    score: float
    explanation: dict[str, Any] | None  # shaped like schemas.ExplanationOut


def checkpoint_id(path: Path) -> str:
    """Short id of a checkpoint: hash of its manifest (which holds every file's sha256)."""
    return hashlib.sha256((path / "fedxrec.json").read_bytes()).hexdigest()[:16]


class Service:
    """Model, catalogue, KG and cold-item store of one API process."""

    def __init__(
        self,
        *,
        model: ServingModel,
        catalogue: Catalogue,
        graph: nx.MultiDiGraph,
        settings: Settings,
        store: ColdItemStore | None = None,
        checkpoint_path: Path | None = None,
    ) -> None:
        missing = [i for i in model.item_ids if i not in catalogue]
        if missing:
            raise StartupError(f"checkpoint has {len(missing)} item ids not in the catalogue, e.g. {missing[:5]}")
        absent = [i for i in model.item_ids if item_node(i) not in graph]
        if absent:
            raise StartupError(f"{len(absent)} checkpoint items are not in the KG, e.g. {absent[:5]}")
        self.model = model
        self.catalogue = catalogue
        self.graph = graph
        self.settings = settings
        self.store = store
        self.checkpoint_path = checkpoint_path
        self.checkpoint_id = checkpoint_id(checkpoint_path) if checkpoint_path else "in-memory"
        self.started = time.time()
        self.cold_ids: list[int] = []
        self._cold_set: set[int] = set()
        self._max_id = max([*catalogue.ids, *model.item_ids], default=-1)  # ids are never handed out twice
        self.explainer = PathExplainer(graph)
        self.n_edges = graph.number_of_edges()
        self._unit = self._normalised(model.vectors)
        self._search = [(it.id, _search_key(it.title)) for it in catalogue.items]
        if store is not None:
            self._replay(store.read_new(), at_startup=True)

    # ------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, settings: Settings) -> Service:
        """Load checkpoint, catalogue and KG named by ``settings`` and replay registered items.

        Raises
        ------
        StartupError
            Naming the path or the inconsistency (also for a damaged checkpoint or KG file).
        """
        t0 = time.perf_counter()
        try:
            model = ServingModel(load_checkpoint(settings.checkpoint))
        except ValueError as e:  # CheckpointError
            raise StartupError(f"checkpoint {settings.checkpoint}: {e}") from e
        data_dir = Path(settings.data_dir)
        if settings.dataset == "ml-100k" and not (data_dir / "ml-100k" / "u.data").exists():
            raise StartupError(f"no ml-100k data under {data_dir} (set FEDXREC_DATA_DIR)")
        kwargs = {"kg_version": settings.kg_version} if settings.dataset == "ml-100k" else {}
        catalogue = load_dataset(settings.dataset, data_dir, **kwargs).catalogue
        try:
            if settings.kg_path is not None:
                graph = kg.load_graph(settings.kg_path, catalogue=catalogue.items)
            else:
                graph = kg.build_graph(catalogue.items, unknown_relations="skip")
        except kg.KGError as e:
            raise StartupError(f"knowledge graph: {e}") from e
        try:
            service = cls(
                model=model,
                catalogue=catalogue,
                graph=graph,
                settings=settings,
                store=ColdItemStore(settings.state_dir),
                checkpoint_path=Path(settings.checkpoint),
            )
        except StoreError as e:
            raise StartupError(str(e)) from e
        log.info(
            "serving %d items (%d cold), KG %d nodes, checkpoint %s, loaded in %.2fs",
            model.num_items,
            len(service.cold_ids),
            graph.number_of_nodes(),
            service.checkpoint_id,
            time.perf_counter() - t0,
        )
        return service

    # ------------------------------------------------------------------------------- queries

    def _ordered(self, history: Sequence[int], timestamps: Sequence[float] | None) -> list[int]:
        if timestamps is None:
            return list(history)
        if len(timestamps) != len(history):
            raise InputError(("body", "timestamps"), f"has {len(timestamps)} entries for {len(history)} history items")
        order = sorted(range(len(history)), key=timestamps.__getitem__)  # stable
        return [history[i] for i in order]

    def _rows(self, ids: Sequence[int], field: str, *, indexed: bool = True) -> np.ndarray:
        row_of = self.model.row_of
        out = np.empty(len(ids), np.int64)
        for i, iid in enumerate(ids):
            r = row_of.get(iid)
            if r is None:
                raise UnknownIdError(("body", field, i) if indexed else ("body", field), self._unknown(iid))
            out[i] = r
        return out

    def _unknown(self, item_id: int) -> str:
        if item_id in self.catalogue:
            return f"item id {item_id} has no vector in the served checkpoint"
        return f"unknown item id {item_id}"

    def _history_rows(self, history: Sequence[int], timestamps: Sequence[float] | None) -> np.ndarray:
        """Rows of the whole history, oldest first (the model reads the latest ``model.history-len``)."""
        if not history:
            raise InputError(("body", "history"), "must hold at least one item id")
        if len(history) > self.settings.max_history:
            raise InputError(
                ("body", "history"),
                f"at most {self.settings.max_history} items (FEDXREC_MAX_HISTORY), got {len(history)}",
            )
        rows = self._rows(history, "history")  # names the position of an unknown id in the request
        return rows if timestamps is None else self._rows(self._ordered(history, timestamps), "history")

    def _explain_window(self, history: Sequence[int], timestamps: Sequence[float] | None) -> list[int]:
        """The latest ``FEDXREC_EXPLAIN_WINDOW`` history items, oldest first (what explanations link from)."""
        return self._ordered(history, timestamps)[-self.settings.explain_window :]

    def _sim(self, history: Sequence[int], targets: Sequence[int]) -> kg.paths.Similarity:
        """Cosine similarity of item vectors, precomputed for history x targets (one matmul)."""
        h_ids = list(dict.fromkeys(history))
        hp = {i: n for n, i in enumerate(h_ids)}
        tp = {i: n for n, i in enumerate(targets)}
        u = self._unit
        m = u[self.model.rows(h_ids)] @ u[self.model.rows(list(targets))].T  # (H, T)
        return lambda h, t: float(m[hp[h], tp[t]])

    def recommend(
        self,
        history: Sequence[int],
        *,
        timestamps: Sequence[float] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        explain: bool = False,
    ) -> list[Scored]:
        """Top-``k`` items for a history (newest last, or ordered by ``timestamps``)."""
        if not 1 <= k <= self.settings.max_k:
            raise InputError(("body", "k"), f"must be between 1 and {self.settings.max_k}, got {k}")
        rows = self._history_rows(history, timestamps)
        weight = self.settings.entity_rerank
        pool = max(k, self.settings.rerank_pool) if weight > 0 else k
        top, scores = self.model.top_k(rows, pool, rows if exclude_seen else None)  # the whole history is excluded
        ids = [self.model.item_ids[r] for r in top]
        window = self._explain_window(history, timestamps)
        if weight > 0 and len(ids) > k:
            ids, scores = self._toward_entities(window, ids, scores, weight, k)
        explanations: list[dict[str, Any] | None] = [None] * len(ids)
        if explain and ids:
            explanations = list(
                self.explainer.explain_data(window, ids, sim=self._sim(window, ids), max_paths=self.settings.max_paths)
            )
        get = self.catalogue.get
        return [Scored(get(i), float(s), e) for i, s, e in zip(ids, scores.tolist(), explanations, strict=True)]

    def _toward_entities(
        self,
        window: list[int],
        ids: list[int],
        scores: np.ndarray,
        weight: float,
        k: int,
    ) -> tuple[list[int], np.ndarray]:
        """The top ``k`` of a candidate pool re-ranked toward items explained through a person or a company.

        ``(1 - weight) * min-max normalised score + weight * [first path through a person or company]``
        (:func:`kg.toward_entities`); the same order whether or not explanations are
        returned. Scores stay the model's.
        """
        reach = kg.can_enter_top_k(ids, scores, weight=weight, k=k)  # the others never do: left unexplained
        firsts = self.explainer.explain(window, reach, sim=self._sim(window, reach), max_paths=1)
        by_item = {e.item_id: e for e in firsts}
        order = kg.toward_entities(ids, scores, by_item, history=window, weight=weight)[:k]
        score_of = dict(zip(ids, scores.tolist(), strict=True))
        return order, np.array([score_of[i] for i in order])

    def score(
        self, history: Sequence[int], item_ids: Sequence[int], *, timestamps: Sequence[float] | None = None
    ) -> list[float]:
        """The model's score of each given item (in the given order)."""
        if not item_ids:
            raise InputError(("body", "item_ids"), "must hold at least one item id")
        if len(item_ids) > self.settings.max_score_items:
            raise InputError(
                ("body", "item_ids"), f"at most {self.settings.max_score_items} items, got {len(item_ids)}"
            )
        cand = self._rows(item_ids, "item_ids")
        rows = self._history_rows(history, timestamps)
        return [float(s) for s in self.model.scores(rows, cand)]

    def explain(
        self, history: Sequence[int], item_id: int, *, timestamps: Sequence[float] | None = None, max_paths: int = 3
    ) -> tuple[float, kg.Explanation]:
        """The model's score of one item and its ranked explanation paths."""
        cand = self._rows([item_id], "item_id", indexed=False)
        rows = self._history_rows(history, timestamps)
        score = float(self.model.scores(rows, cand)[0])
        window = self._explain_window(history, timestamps)
        (expl,) = self.explainer.explain(window, [item_id], sim=self._sim(window, [item_id]), max_paths=max_paths)
        return score, expl

    def item(self, item_id: int) -> Item:
        """A catalogue item; raises :class:`UnknownIdError` naming the path parameter."""
        if item_id not in self.catalogue:
            raise UnknownIdError(("path", "item_id"), f"unknown item id {item_id}")
        return self.catalogue.get(item_id)

    def search(self, query: str, *, offset: int, limit: int) -> tuple[int, list[Item]]:
        """Items whose title contains ``query`` (case-insensitive; "The Godfather" finds "Godfather, The")."""
        q = query.strip().casefold()
        hits = [i for i, key in self._search if q in key] if q else [i for i, _ in self._search]
        return len(hits), [self.catalogue.get(i) for i in hits[offset : offset + limit]]

    def is_cold(self, item_id: int) -> bool:
        return item_id in self._cold_set

    def recommendable(self, item_id: int) -> bool:
        return item_id in self.model.row_of

    # ------------------------------------------------------------------------- cold-start items

    def check_new_item(self, new: NewItem) -> None:
        """Check what the schema cannot (genres of this catalogue, entity names the KG can label)."""
        known = set(self.catalogue.genres)
        for n, g in enumerate(new.genres):
            if g not in known:
                raise InputError(("body", "genres", n), f"unknown genre {g!r}; known: {sorted(known)}")
        for rel, ents in new.entities.items():
            for n, e in enumerate(ents):
                try:
                    kg.entity_label(e)
                except ValueError as err:
                    raise InputError(("body", "entities", rel, n), str(err)) from None

    def text_vector(self, new: NewItem) -> np.ndarray:
        """(D,) text-tower vector of a new item (slow: the backbone runs; call off the event loop)."""
        return self.model.text_vectors([new.catalogue_item(0).text()])[0]

    def register(self, new: NewItem, text_vector: np.ndarray) -> tuple[int, int]:
        """Give ``new`` an id, insert it everywhere and persist it; returns (id, number of KG neighbours).

        Call on the event loop thread (it mutates the serving state).
        """
        self.check_new_item(new)
        if self.store is None:
            raise StartupError("no cold-item store configured")
        with self.store.locked():
            self.sync()  # items other workers registered come first (ids stay unique)
            item_id = self._max_id + 1
            node = kg.add_item(self.graph, _kg_record(item_id, new))
            try:
                vec, bias, n_nb = self._cold_vector(item_id, text_vector)
                record = {
                    "id": item_id,
                    "title": new.title,
                    "year": new.year,
                    "genres": new.genres,
                    "text": new.text,
                    "entities": new.entities,
                    "vector": vec.tolist(),
                    "bias": bias,
                    "checkpoint": self.checkpoint_id,
                    "created": time.time(),
                }
                self.store.append(record)
            except BaseException:
                _remove_item(self.graph, node)
                raise
        self._apply(item_id, new, vec, bias)
        self.explainer.refresh()
        log.info("registered cold item %d with %d KG neighbours", item_id, n_nb)
        return item_id, n_nb

    def delete(self, item_id: int) -> None:
        """Remove a registered (cold) item everywhere, and from the store (rewritten atomically).

        Raises
        ------
        UnknownIdError
            No item has this id (404).
        ConflictError
            The item is in the catalogue the checkpoint was trained on (only registered items go).
        """
        loc: Loc = ("path", "item_id")
        if self.store is None:
            raise StartupError("no cold-item store configured")
        with self.store.locked():
            self.sync()  # another worker may have deleted it (or registered more) meanwhile
            if item_id not in self.catalogue:
                raise UnknownIdError(loc, f"unknown item id {item_id}")
            if item_id not in self._cold_set:
                raise ConflictError(
                    loc,
                    f"item {item_id} is a catalogue item; only items registered through POST /v1/items can be deleted",
                )
            self.store.remove(item_id)
        self._unapply(item_id)
        self.explainer.refresh()
        log.info("deleted cold item %d", item_id)

    def sync(self) -> None:
        """Pick up items other worker processes registered or deleted (cheap when there are none)."""
        if self.store is None or not self.store.changed():
            return
        if self.store.rewritten():  # a deletion rewrote the file: reconcile with all of it
            records = self.store.read_all()
            live = {r["id"] for r in records if not r.get("deleted")}
            gone = [i for i in self.cold_ids if i not in live]
            for i in gone:
                self._unapply(i)
            if gone:
                self.explainer.refresh()
                log.info("synced %d deleted cold items", len(gone))
            self._replay(records, at_startup=False)
        else:
            self._replay(self.store.read_new(), at_startup=False)

    def _replay(self, records: list[dict[str, Any]], *, at_startup: bool) -> None:
        added = 0
        where = self.store.path if self.store else "store"
        for rec in records:
            item_id = rec["id"]
            self._max_id = max(self._max_id, item_id)
            if rec.get("deleted"):
                if item_id in self._cold_set:
                    self._unapply(item_id)
                continue
            if item_id in self._cold_set:
                continue  # this process registered it
            if item_id in self.catalogue:
                raise StoreError(f"{where}: item {item_id} is already in the catalogue")
            try:
                new = NewItem(
                    rec["title"], rec.get("year"), list(rec["genres"]), rec.get("text", ""), dict(rec["entities"])
                )
                kg.add_item(self.graph, _kg_record(item_id, new))
            except (KeyError, TypeError, ValueError, kg.KGError) as e:
                raise StoreError(f"{where}: item {item_id}: malformed record: {e}") from e
            if rec.get("checkpoint") == self.checkpoint_id:
                try:
                    vec, bias = np.asarray(rec["vector"], np.float32), float(rec["bias"])
                    bad = self.model.out_of_range(vec, bias)
                except (KeyError, TypeError, ValueError) as e:
                    bad = f"malformed vector or bias ({e})"
                if bad:
                    _remove_item(self.graph, item_node(item_id))
                    raise StoreError(
                        f"{where}: item {item_id}: {bad}; remove that item's line from the file"
                        " (then register it again) to start"
                    )
            else:  # registered under another checkpoint: recompute from text and KG
                log.info("cold item %d was registered under another checkpoint; recomputing its vector", item_id)
                vec, bias, _ = self._cold_vector(item_id, self.text_vector(new))
            self._apply(item_id, new, vec, bias)
            added += 1
        if added:
            self.explainer.refresh()
            log.info("%s %d registered cold items", "replayed" if at_startup else "synced", added)

    def _cold_vector(self, item_id: int, text_vector: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Text vector mixed with the KG neighbour prior; bias = the neighbours' weighted mean bias."""
        m = self.model
        nb = [(i, w) for i, w in kg.neighbours(self.graph, item_id) if i in m.row_of][:DEFAULT_MAX_NEIGHBOURS]
        if not nb:
            return m.normalise(text_vector), float(np.median(m.bias)), 0
        prior = kg.neighbour_prior(self.graph, item_id, m.vectors, m.row_of)
        a = self.settings.prior_weight
        vec = m.normalise((1.0 - a) * text_vector + a * prior)  # as the catalogue's (unit length under cosine)
        w = np.array([x for _, x in nb])
        bias = float(w @ m.bias[[m.row_of[i] for i, _ in nb]] / w.sum())
        return vec, bias, len(nb)

    def _apply(self, item_id: int, new: NewItem, vec: np.ndarray, bias: float) -> None:
        item = new.catalogue_item(item_id)
        self.catalogue.add(item)
        self.model.add_item(item_id, vec, bias)
        self._unit = np.vstack([self._unit, self._normalised(vec[None, :])])
        self._search.append((item_id, _search_key(item.title)))
        self.cold_ids.append(item_id)
        self._cold_set.add(item_id)
        self._max_id = max(self._max_id, item_id)
        self.n_edges += self.graph.out_degree(item_node(item_id))

    def _unapply(self, item_id: int) -> None:
        """Undo :meth:`_apply` (the caller refreshes the explainer)."""
        node = item_node(item_id)
        self.n_edges -= self.graph.out_degree(node)
        _remove_item(self.graph, node)
        self.catalogue = Catalogue([it for it in self.catalogue.items if it.id != item_id], self.catalogue.genres)
        row = self.model.remove_item(item_id)
        self._unit = np.delete(self._unit, row, axis=0)
        self._search = [(i, key) for i, key in self._search if i != item_id]
        self.cold_ids.remove(item_id)
        self._cold_set.discard(item_id)

    @staticmethod
    def _normalised(v: np.ndarray) -> np.ndarray:
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _search_key(title: str) -> str:
    t = title.casefold()
    return f"{t}\n{display_title(title).casefold()}"


def _kg_record(item_id: int, new: NewItem) -> dict[str, Any]:
    return {"id": item_id, "title": new.title, "year": new.year, "genres": new.genres, "entities": new.entities}


def _remove_item(graph: nx.MultiDiGraph, node: str) -> None:
    """Undo :func:`kg.add_item`: the item node and the entity nodes only it linked to."""
    orphans = [e for e in graph.succ[node] if len(graph.pred[e]) == 1]
    graph.remove_node(node)
    graph.remove_nodes_from(orphans)

"""Walking routes over the site map graph (networkx): fastest route per profile, turn-by-turn steps, distances.

The graph is directed so a lift's waiting time is paid on boarding only. Nodes are rooms, junctions
and one node per lift car stop (``L2@A3``); edges are doors, ways, lift rides and stair flights, each
with its length and type. A profile decides which edges exist for it and how long they take:

- ``staff``: everything, walking 1.4 m/s;
- ``visitor``: nothing restricted (rooms, junctions, ways, doors, lifts marked ``restricted``), 1.1 m/s;
- ``wheelchair``: no stairs and no inaccessible door or way (steps), 0.9 m/s;
- ``bed_transport``: as wheelchair, and only lifts that take a bed, 0.7 m/s.

Routes minimise time (walking time plus lift waits and rides); stair flights are walked at half speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise
from typing import Any, Final, Literal, get_args

import msgspec
import networkx as nx

from facilities.sitemap import SiteMap

Profile = Literal["staff", "visitor", "wheelchair", "bed_transport"]
PROFILES: Final[tuple[str, ...]] = get_args(Profile)
SPEED_M_S: Final[dict[str, float]] = {"staff": 1.4, "visitor": 1.1, "wheelchair": 0.9, "bed_transport": 0.7}
STAIRS_SLOWDOWN: Final = 2.0
TURN_DEG: Final = 30.0
WALKS: Final = frozenset({"door", "corridor", "ramp", "bridge", "outdoor"})


class RouteError(LookupError):
    """No route: an unknown place, or none the profile may take; the message says which."""


class Step(msgspec.Struct, frozen=True):
    """One instruction a person can follow."""

    instruction: str
    kind: str  # start, walk, turn, ramp, bridge, outdoor, lift, stairs, arrive
    at: str  # the node where the step ends
    floor: str
    distance_m: float = 0.0
    time_s: float = 0.0


class Route(msgspec.Struct, frozen=True):
    """A route between two nodes of the map for one profile."""

    origin: str
    destination: str
    profile: str
    length_m: float
    time_s: float
    floors: list[str]  # floors passed, in order (ids)
    floors_crossed: int  # levels gone up or down in all
    buildings: list[str]
    steps: list[Step]
    path: list[str]


def _heading(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float] | None:
    """The unit direction from node ``a`` to node ``b`` on the plan, or None when they coincide."""
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]
    norm = math.hypot(dx, dy)
    return None if norm < 1e-9 else (dx / norm, dy / norm)


def _turn(before: tuple[float, float] | None, after: tuple[float, float] | None) -> str | None:
    """``left``, ``right``, ``around`` or None (straight on) from one heading to the next (y points north)."""
    if before is None or after is None:
        return None
    cross = before[0] * after[1] - before[1] * after[0]
    dot = before[0] * after[0] + before[1] * after[1]
    angle = math.degrees(math.atan2(cross, dot))
    if abs(angle) >= 150:
        return "around"
    if angle > TURN_DEG:
        return "left"
    if angle < -TURN_DEG:
        return "right"
    return None


class Wayfinder:
    """Routes and walking distances over one site map."""

    def __init__(self, site_map: SiteMap) -> None:
        """Build the graph once; it is read-only afterwards (safe to share between requests)."""
        self.map = site_map
        self.graph = nx.DiGraph()
        self._build()
        self._weights = {profile: self._weight(profile) for profile in PROFILES}
        self._stairs = {s.id: s.name or f"stairs {s.id}" for s in site_map.stairs}

    # -- the graph ----------------------------------------------------------------------------------

    def _build(self) -> None:
        m, g = self.map, self.graph
        for room in m.rooms:
            g.add_node(room.id, kind="room", floor=room.floor, x=room.x, y=room.y, name=room.name or room.id,
                       restricted=room.restricted)
        for junction in m.junctions:
            g.add_node(junction.id, kind="junction", floor=junction.floor, x=junction.x, y=junction.y,
                       name=junction.name or junction.id, restricted=junction.restricted)
        for door in m.doors:
            self._both(door.room, door.to, type="door", length_m=door.length_m, accessible=door.accessible,
                       restricted=door.restricted, via=door.id)
        for way in m.ways:
            self._both(way.from_, way.to, type=way.type, length_m=way.length_m, accessible=way.accessible,
                       restricted=way.restricted, via=way.id)
        for lift in m.lifts:
            cars = []
            for stop in lift.stops:
                car = f"{lift.id}@{m.junction_index[stop].floor}"
                lobby = g.nodes[stop]
                g.add_node(car, kind="lift", floor=lobby["floor"], x=lobby["x"], y=lobby["y"],
                           name=lift.name or lift.id, restricted=lift.restricted, lift=lift.id)
                common = {"length_m": 0.0, "accessible": True, "restricted": lift.restricted, "via": lift.id,
                          "bed": lift.bed}
                g.add_edge(stop, car, type="lift_board", seconds=lift.wait_s, **common)
                g.add_edge(car, stop, type="lift_exit", seconds=0.0, **common)
                cars.append(car)
            levels = [self.map.floor_index[g.nodes[c]["floor"]].level for c in cars]
            order = sorted(range(len(cars)), key=lambda i: levels[i])
            for a, b in pairwise(order):
                self._both(cars[a], cars[b], type="lift", length_m=0.0, accessible=True, restricted=lift.restricted,
                           via=lift.id, bed=lift.bed, seconds=lift.s_per_floor * abs(levels[b] - levels[a]))
        for stairs in m.stairs:
            landing = {s: self.map.floor_of(s).level for s in stairs.stops}
            for low, high in pairwise(sorted(stairs.stops, key=lambda s: landing[s])):
                self._both(low, high, type="stairs", length_m=stairs.length_m * abs(landing[high] - landing[low]),
                           accessible=False, restricted=stairs.restricted, via=stairs.id)

    def _both(self, a: str, b: str, **attrs: Any) -> None:
        self.graph.add_edge(a, b, **attrs)
        self.graph.add_edge(b, a, **attrs)

    def _weight(self, profile: str) -> Callable[[str, str, dict[str, Any]], float | None]:
        """Seconds to take an edge with ``profile``; None hides the edge from the profile."""
        speed = SPEED_M_S[profile]
        nodes = self.graph.nodes
        step_free = profile in ("wheelchair", "bed_transport")

        def weight(_a: str, b: str, edge: dict[str, Any]) -> float | None:
            if profile == "visitor" and (edge["restricted"] or nodes[b]["restricted"]):
                return None
            if step_free and not edge["accessible"]:
                return None
            if profile == "bed_transport" and edge["type"].startswith("lift") and not edge["bed"]:
                return None
            if "seconds" in edge:
                return float(edge["seconds"])
            slowdown = STAIRS_SLOWDOWN if edge["type"] == "stairs" else 1.0
            return float(edge["length_m"]) / speed * slowdown

        return weight

    # -- places -------------------------------------------------------------------------------------

    def place(self, name: str) -> str:
        """The node of a room id, bed id or junction id; :class:`RouteError` when the map has none."""
        if name in self.map.room_index or name in self.map.junction_index:
            return name
        room = self.map.bed_rooms.get(name)
        if room is None:
            raise RouteError(f"{name!r} is not a room, bed or junction of the site map")
        return room

    # -- routes -------------------------------------------------------------------------------------

    def route(self, origin: str, destination: str, profile: Profile = "staff") -> Route:
        """The fastest route for ``profile`` between two places (room, bed or junction ids)."""
        if profile not in PROFILES:
            raise RouteError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
        start, end = self.place(origin), self.place(destination)
        if profile == "visitor":
            for node in (start, end):
                if self.graph.nodes[node]["restricted"]:
                    raise RouteError(f"{self.graph.nodes[node]['name']} ({node}) is closed to visitors")
        try:
            path: list[str] = nx.shortest_path(self.graph, start, end, weight=self._weights[profile])
        except nx.NetworkXNoPath:
            raise RouteError(f"no {profile} route from {origin} to {destination}") from None
        return self._describe(path, origin, destination, profile)

    def distances_from(self, room: str, profile: Profile = "staff") -> dict[str, float]:
        """Walking distance in metres along the fastest route from ``room`` (or bed) to every reachable room."""
        start = self.place(room)
        _, paths = nx.single_source_dijkstra(self.graph, start, weight=self._weights[profile])
        rooms = self.map.room_index
        edges = self.graph.edges
        return {node: round(0.0 + sum(edges[a, b]["length_m"] for a, b in pairwise(path)), 1)
                for node, path in paths.items() if node in rooms}

    def _describe(self, path: list[str], origin: str, destination: str, profile: str) -> Route:
        """Totals and turn-by-turn steps of a path."""
        g = self.graph
        nodes = [g.nodes[n] for n in path]
        steps = [Step(f"Start at {nodes[0]['name']}", "start", path[0], nodes[0]["floor"])]
        weight = self._weights[profile]
        total_m = total_s = 0.0
        walked_m = walked_s = 0.0
        heading: tuple[float, float] | None = None
        crossed = 0
        i = 0
        while i < len(path) - 1:
            a, b = path[i], path[i + 1]
            edge = g.edges[a, b]
            seconds = weight(a, b, edge) or 0.0
            kind = edge["type"]
            total_m += edge["length_m"]
            total_s += seconds
            if kind in WALKS:
                new_heading = _heading(nodes[i], nodes[i + 1])
                turn = _turn(heading, new_heading) if kind == "corridor" or kind == "door" else None
                if turn is not None and walked_m > 0:
                    steps.append(Step(f"Walk {walked_m:.0f} m to {nodes[i]['name']} and turn {turn}"
                                      if turn != "around" else f"Walk {walked_m:.0f} m to {nodes[i]['name']} "
                                                               "and turn around", "turn", a, nodes[i]["floor"],
                                      round(walked_m, 1), round(walked_s, 1)))
                    walked_m = walked_s = 0.0
                if kind in ("ramp", "bridge", "outdoor"):
                    if walked_m > 0:
                        steps.append(Step(f"Walk {walked_m:.0f} m to {nodes[i]['name']}", "walk", a,
                                          nodes[i]["floor"], round(walked_m, 1), round(walked_s, 1)))
                    what = {"ramp": "Take the ramp", "bridge": "Cross the bridge",
                            "outdoor": "Follow the covered walkway"}[kind]
                    steps.append(Step(f"{what} ({edge['length_m']:.0f} m) to {nodes[i + 1]['name']}", kind, b,
                                      nodes[i + 1]["floor"], round(edge["length_m"], 1), round(seconds, 1)))
                    walked_m = walked_s = 0.0
                else:
                    walked_m += edge["length_m"]
                    walked_s += seconds
                heading = new_heading
                i += 1
                continue
            # A lift or a staircase: finish the walk to it, then ride or climb to where it is left.
            if walked_m > 0:
                steps.append(Step(f"Walk {walked_m:.0f} m to {nodes[i]['name']}", "walk", a, nodes[i]["floor"],
                                  round(walked_m, 1), round(walked_s, 1)))
                walked_m = walked_s = 0.0
            j = i + 1
            ride_s, ride_m = seconds, edge["length_m"]
            while j < len(path) - 1 and g.edges[path[j], path[j + 1]]["type"] in ("lift", "lift_exit", "stairs") \
                    and g.edges[path[j], path[j + 1]]["via"] == edge["via"]:
                nxt = g.edges[path[j], path[j + 1]]
                ride_s += weight(path[j], path[j + 1], nxt) or 0.0
                ride_m += nxt["length_m"]
                total_s += weight(path[j], path[j + 1], nxt) or 0.0
                total_m += nxt["length_m"]
                j += 1
            start_floor = self.map.floor_index[nodes[i]["floor"]]
            end_floor = self.map.floor_index[g.nodes[path[j]]["floor"]]
            levels = end_floor.level - start_floor.level
            crossed += abs(levels)
            if kind == "stairs":
                direction = "up" if levels > 0 else "down"
                count = f"{abs(levels)} floor{'s' * (abs(levels) > 1)}"
                text = (f"Take the {self._stairs[edge['via']]} {direction} {count} to floor {end_floor.level} "
                        f"({end_floor.name or end_floor.id})")
            else:
                lift = g.nodes[path[i + 1]]["lift"]
                text = f"Take lift {lift} to floor {end_floor.level} ({end_floor.name or end_floor.id})"
            steps.append(Step(text, "stairs" if kind == "stairs" else "lift", path[j], end_floor.id,
                              round(ride_m, 1), round(ride_s, 1)))
            heading = None
            i = j
        last = nodes[-1]
        if walked_m > 0 or len(path) == 1:
            steps.append(Step(f"Walk {walked_m:.0f} m to {last['name']}", "walk", path[-1], last["floor"],
                              round(walked_m, 1), round(walked_s, 1)))
        steps.append(Step(f"Arrive at {last['name']}", "arrive", path[-1], last["floor"]))
        floors: list[str] = []
        for node in nodes:
            if node["kind"] != "lift" and (not floors or floors[-1] != node["floor"]):
                floors.append(node["floor"])
        buildings: list[str] = []
        for floor in floors:
            building = self.map.floor_index[floor].building
            if not buildings or buildings[-1] != building:
                buildings.append(building)
        return Route(origin, destination, profile, round(total_m, 1), round(total_s, 1), floors, crossed, buildings,
                     steps, path)

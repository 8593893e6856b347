// The charge nurse's unit: the shift's assignments (add, end).
import { api } from "../api.js";
import { h, table, toast } from "../dom.js";

export async function render(main) {
  const beds = await api("/api/v1/beds");
  const units = [...new Set(beds.map((b) => b.unit))];
  const unitPick = h("select", { id: "assign-unit" }, units.map((u) => h("option", {}, u)));
  const list = h("div", { id: "assignment-list" });

  async function load() {
    const rows = await api(`/api/v1/units/${encodeURIComponent(unitPick.value)}/assignments`);
    list.replaceChildren(table([
      { label: "Staff", cell: (a) => a.staff }, { label: "Role", cell: (a) => a.role },
      { label: "Bed", cell: (a) => a.bed || "whole unit" },
      { label: "Until", cell: (a) => new Date(a.valid_to).toLocaleString() },
      { label: "", cell: (a) => h("button", { type: "button", class: "end", onclick: async () => {
        try {
          await api(`/api/v1/assignments/${a.id}/end`, { method: "POST" });
          toast(`Ended ${a.staff} on ${a.bed || a.unit}`);
          await load();
        } catch (err) { toast(`Could not end: ${err.message}`); }
      } }, `End ${a.staff} ${a.bed || ""}`.trim()) }], rows, { caption: `Assignments of ${unitPick.value} now` }));
  }

  const staff = h("input", { id: "assign-staff", required: true, autocomplete: "off" });
  const role = h("select", { id: "assign-role" }, ["primary", "buddy", "charge"].map((r) => h("option", {}, r)));
  const bed = h("select", { id: "assign-bed" });
  const hours = h("input", { id: "assign-hours", type: "number", min: 1, max: 24, value: 12 });
  const fillBeds = () => bed.replaceChildren(h("option", { value: "" }, "whole unit"),
    ...beds.filter((b) => b.unit === unitPick.value).map((b) => h("option", {}, b.id)));
  fillBeds();
  unitPick.addEventListener("change", () => { fillBeds(); load(); });
  const form = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("/api/v1/assignments", { method: "POST", body: { staff: staff.value.trim(), unit: unitPick.value,
        role: role.value, bed: bed.value || null, valid_to: Date.now() + Number(hours.value) * 3_600_000 } });
      toast(`Assigned ${staff.value}`);
      await load();
    } catch (err) { toast(`Could not assign: ${err.message}`); }
  } },
  h("label", { for: "assign-staff" }, "Staff id"), staff, h("label", { for: "assign-role" }, "Role"), role,
  h("label", { for: "assign-bed" }, "Bed"), bed, h("label", { for: "assign-hours" }, "Hours"), hours,
  h("button", { type: "submit" }, "Assign"));
  main.append(h("h1", {}, "Assignments"), h("label", { for: "assign-unit" }, "Unit "), unitPick, list,
    h("h2", {}, "Assign for this shift"), form);
  await load();
}

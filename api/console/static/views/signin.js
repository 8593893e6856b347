// Sign-in: user name and password for a bearer token (POST /api/v1/auth/token).
import { signIn } from "../api.js";
import { h } from "../dom.js";

export async function render(main, ctx, params, done) {
  const error = h("p", { class: "error", id: "signin-error", role: "alert" });
  const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password",
    required: true });
  const form = h("form", { class: "signin", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await signIn(user.value.trim(), pass.value);
      await done();
    } catch (err) {
      error.textContent = `Not signed in: ${err.message}`;
    }
  } },
  h("h1", {}, "Sign in"),
  h("label", { for: "username" }, "User name"), user,
  h("label", { for: "password" }, "Password"), pass,
  h("button", { type: "submit", id: "sign-in" }, "Sign in"), error);
  main.append(form);
  user.focus();
}

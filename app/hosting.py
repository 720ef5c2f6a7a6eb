"""What a hosted dashboard adds: an optional login, and HTML exports of a page or the whole store."""

from __future__ import annotations

import streamlit as st

from subspace_atlas.store import Store

def signed_in() -> bool:
    """True when no login is configured, or the visitor has logged in (and is allowed); else shows the login.

    Login is Streamlit's own (``st.login``, OIDC), on when ``.streamlit/secrets.toml`` has an ``[auth]``
    section; ``[atlas] allowed_emails = [...]`` additionally limits who may look.
    """
    try:
        configured = "auth" in st.secrets
    except FileNotFoundError:
        configured = False
    if not configured:
        return True
    if not st.user.is_logged_in:
        st.title("Subspace Atlas")
        st.write("This dashboard is private. Log in to see it.")
        st.button("Log in", on_click=st.login, type="primary", key="login")
        return False
    allowed = st.secrets.get("atlas", {}).get("allowed_emails")
    if allowed and st.user.get("email") not in allowed:
        st.error(f"{st.user.get('email') or 'This account'} may not see this dashboard.")
        st.button("Log out", on_click=st.logout, key="logout")
        return False
    st.sidebar.button(f"Log out {st.user.get('email') or ''}".strip(), on_click=st.logout, key="logout")
    return True


def export_buttons(store: Store, title: str) -> None:
    """Sidebar downloads: this page's figures as shown, and the whole store, each one HTML file (built on click)."""
    from subspace_atlas import report

    figures = list(st.session_state.get("_figures", []))
    slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
    st.sidebar.caption("Offline copies (plotly.js inlined, opens without a network)")
    if figures:
        st.sidebar.download_button(
            "This page as HTML", key="export_page", on_click="ignore", mime="text/html",
            file_name=f"atlas-{slug}.html", icon=":material/download:",
            data=lambda: report.html(f"Subspace Atlas: {title}", [report.Section(title, figures)], str(store.root)))
    st.sidebar.download_button(
        "Whole store as HTML", key="export_store", on_click="ignore", mime="text/html",
        file_name="atlas-report.html", icon=":material/download:", data=lambda: report.store_report(store))

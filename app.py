"""DepthScope dashboard: ``streamlit run app.py`` (or ``make run``).

One file per page in pages/; every page opens with ``pages._skeleton.start_page``, and the sidebar
(model, prompt set, database, settings, background jobs) is drawn here once for all of them.
"""

from __future__ import annotations

import streamlit as st

from pages._skeleton import run_page

PAGES = [
    st.Page(
        "pages/explorer.py",
        title="Prompt explorer",
        icon=":material/search:",
        url_path="explorer",
        default=True,
    ),
    st.Page("pages/sweep.py", title="Depth sweep", icon=":material/show_chart:", url_path="sweep"),
    st.Page("pages/judges.py", title="Judges", icon=":material/balance:", url_path="judges"),
    st.Page("pages/probes.py", title="Probes", icon=":material/biotech:", url_path="probes"),
    st.Page("pages/report.py", title="Report", icon=":material/summarize:", url_path="report"),
]

run_page(st.navigation(PAGES))

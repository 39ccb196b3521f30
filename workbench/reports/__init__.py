"""What an analysis becomes for people: overlays and figures, the HTML/JSON report, batch runs over many
photographs, and audits of a labelled folder."""

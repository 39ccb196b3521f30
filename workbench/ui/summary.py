"""The headline of an analysis as Markdown: grade and referable probabilities (each named), DME, quality,
landmarks and their doubt, unreliable lesion types, the models that ran (an ensemble by its own name) and
stage timings. Shared by Analyze and both browsers."""

from __future__ import annotations

from models.constants import DME_NAMES, DR_GRADE_NAMES
from workbench.analysis import Analysis
from workbench.analysis.lesion_trust import RELIABILITY_FLOOR
from workbench.analysis.result import grade_uncertainty_note, referral_note
from workbench.quality import forced_grade_warning

__all__ = ["FORCE_LABEL", "FOVEA_REFINED", "headline_lines", "landmarks_caption", "summary_markdown"]

FORCE_LABEL = "Grade even if the quality check fails"  # the Analyze tab's checkbox

# what the fovea refiner did (workbench.landmarks.fovea), by ``Analysis.fovea_refined``
FOVEA_REFINED = {
    None: "",
    True: "refined at higher resolution",
    False: "not refined: the refiner found no fovea near it",
}


def landmarks_caption(analysis: Analysis) -> str:
    """Caption of the landmarks view: what is drawn and what the refiners did."""
    disc = "optic disc (outline refined)" if analysis.disc_outline_refined else "optic disc"
    refined = FOVEA_REFINED[analysis.fovea_refined]
    return f"{disc}, fovea{f' ({refined})' if refined else ''} and ETDRS grid"


def _dme_meaning(grade: int) -> str:
    """What a DME risk grade means, without repeating "DME risk N": "macular", "no exudates"."""
    name = DME_NAMES[grade]
    return name[name.index("(") + 1 : -1] if "(" in name else "no exudates"


def headline_lines(analysis: Analysis) -> list[str]:
    """The summary's head for a graded photograph (markdown lines): a forced grade's warning, the DR grade
    and referral with their probabilities, where they disagree, an uncertain grade's runner-up, DME risk and
    quality. The Streamlit viewer shows the same lines above its pictures."""
    referable = "**REFERABLE**" if analysis.referable else "not referable"
    grade_p = float(analysis.dr_probabilities[analysis.dr_grade])
    dme_p = float(analysis.dme_probabilities[analysis.dme_grade])
    # a grade given on request says so before anything else (workbench.quality.forced_grade_warning)
    forced = [] if analysis.quality.gradeable else [f"## {forced_grade_warning(analysis.quality.reasons)}"]
    level = "###" if forced else "##"
    # where the grade and the referral disagree (a flat distribution), said right under them
    note = referral_note(analysis.dr_grade, analysis.referable_probability)
    return [
        *forced,
        f"{level} DR grade {analysis.dr_grade}: {DR_GRADE_NAMES[analysis.dr_grade]} (grade probability "
        f"{grade_p:.2f}) · {referable} (referable probability {analysis.referable_probability:.2f})",
        *([f"**Grade and referral:** {note}"] if note else []),
        *(
            [f"**Uncertain grade:** {doubt}"]
            if (doubt := grade_uncertainty_note(analysis.dr_probabilities))
            else []
        ),
        f"**DME risk {analysis.dme_grade}** ({_dme_meaning(analysis.dme_grade)}, probability {dme_p:.2f})",
        f"**Quality:** {'gradeable' if analysis.quality.gradeable else 'NOT gradeable (forced)'}",
    ]


def summary_markdown(analysis: Analysis) -> str:
    if not analysis.graded:
        return (
            "## Not gradeable\n"
            + "\n".join(f"- {reason}" for reason in analysis.quality.reasons)
            + f"\n\nTo grade it anyway, tick **{FORCE_LABEL}** (the grade is then headed by the "
            "failed check)."
        )
    lines = headline_lines(analysis)
    if analysis.laterality is not None and analysis.laterality.agrees is False:  # up top: not to be missed
        lines.append(f"**Eye: MISMATCH:** {analysis.laterality.sentence.removeprefix('MISMATCH: ')}")
    if analysis.fovea_doubt is not None:
        lines.append(
            f"**Fovea doubtful** ({analysis.fovea_doubt}): ETDRS grid, lesions by region and the DME rule "
            "check are not available for this image."
        )
    elif analysis.dme_check is not None:
        check = analysis.dme_check
        where = (
            "no exudates found"
            if check.nearest_exudate_dd is None
            else f"nearest exudate {check.nearest_exudate_dd:.2f} disc diameters from the fovea"
        )
        verdict = "agrees" if check.agrees else "**DISAGREES**"
        lines.append(
            f"**DME rule check (IDRiD definition):** rule says {check.grade} ({where}); grader says "
            f"{check.grader_grade}: {verdict}"
        )
    # "trusted" beside a low detector confidence read as a contradiction: say what it is trusted on
    fovea_state = "doubtful" if analysis.fovea_doubt else "trusted: it passes the anatomy checks"
    disc_doubt = f" (doubtful: {analysis.od_doubt})" if analysis.od_doubt else ""
    outline = ", outline refined around it" if analysis.disc_outline_refined else ""
    refined = f", {FOVEA_REFINED[analysis.fovea_refined]}" if analysis.fovea_refined is not None else ""
    lines.append(
        f"**Optic disc** ({analysis.od_xy[0]:.0f}, {analysis.od_xy[1]:.0f}) px, confidence "
        f"{analysis.od_confidence:.2f}{outline}{disc_doubt}; "
        f"**fovea** ({analysis.fovea_xy[0]:.0f}, {analysis.fovea_xy[1]:.0f}) px, detector confidence "
        f"{analysis.fovea_confidence:.2f}{refined}, {fovea_state}"
    )
    if analysis.laterality is not None and analysis.laterality.agrees is not False:
        lines.append(f"**Eye:** {analysis.laterality.sentence}")
    unreliable = [r.code for r in analysis.lesion_reliability.values() if not r.reliable and r.code != "OD"]
    if unreliable and not analysis.quality.gradeable:
        lines.append(
            "**No lesion type is reliable here:** the photograph failed the quality check and was analysed "
            "on request; its counts and areas are shown greyed and are not findings."
        )
    elif unreliable:
        lines.append(
            f"**Unreliable lesion types:** {', '.join(unreliable)} (validated AUPR below "
            f"{RELIABILITY_FLOOR:.2f}): their counts and areas are shown greyed and are not findings."
        )
    timing = ", ".join(f"{k} {v:.0f} ms" for k, v in analysis.timings_ms.items())
    # a network that ran in bf16 (workbench.precision) says so; the report's "runtimes" has the details
    models = ", ".join(
        f"{role} {name}" + (" (bf16)" if analysis.runtimes.get(role, "").endswith(" bf16") else "")
        for role, name in analysis.models.items()
    )
    lines.append(f"<small>Profile: {analysis.profile}. Models: {models}. Timings: {timing}</small>")
    return "\n\n".join(lines)

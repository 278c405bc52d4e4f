"""Snakemake never removes a published artifact: a job whose output is published reuses it.

Snakemake deletes a job's existing outputs before it runs the job. With two runs on one store (two
experiments that share stages, in two working directories), the second run's job for a shared
artifact may start after the first run published it: Snakemake would then delete the artifact
while the first run's next stages read it. And an artifact whose date is older than an input's (a
reused input is dated anew by the run that reused it) would be deleted and built again although its
key, which digests everything it was made from, is unchanged. A published artifact is complete and
immutable, so the job keeps it and its stage finds it published (``staging.AlreadyPublished``).
Only ``latentqa-store gc`` and ``verify --repair`` remove artifacts; to rebuild one, move it away.

:func:`keep_published_outputs` is called by ``workflow/rules/common.smk`` when Snakemake parses.
"""

from __future__ import annotations

import os

from pipeline.core.store import MANIFEST


def published(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def keep_published_outputs() -> None:
    """Make Snakemake's removal of a job's outputs before it runs skip published artifacts."""
    from snakemake.io import is_flagged
    from snakemake.jobs import Job
    from snakemake.logging import logger

    original = Job.remove_existing_output
    if getattr(original, "keeps_published", False):
        return

    async def remove_existing_output(self):
        kept = [f for f in self.output if published(f)]
        if not kept:
            return await original(self)
        logger.info(f"Keeping {', '.join(kept)}: published (the job will reuse it)")
        for f in self.output:
            if f not in kept and not is_flagged(f, "update"):
                try:
                    await f.remove(remove_non_empty_dir=False)
                except FileNotFoundError:
                    pass
        for f in self.log:
            await f.remove(remove_non_empty_dir=False)

    remove_existing_output.keeps_published = True
    Job.remove_existing_output = remove_existing_output

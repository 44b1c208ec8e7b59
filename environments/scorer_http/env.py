"""An HTTP-based environment: a FastAPI app of its own, run by uvicorn.

Rayfine does not inject its server here. `env.call("evaluate", {...})` becomes
`POST /evaluate` with the kwargs as the JSON body, and `list_methods()` reads `/openapi.json`.
"""

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI(title="scorer")


class Answer(BaseModel):
    task_id: int
    answer: str


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/evaluate")
def evaluate(item: Answer):
    """Scores an answer: 1.0 when it is the task id spelled backwards, else 0.0."""
    if item.task_id < 0:
        raise HTTPException(status_code=422, detail="task_id must not be negative")
    expected = str(item.task_id)[::-1]
    return {"task_id": item.task_id, "score": 1.0 if item.answer == expected else 0.0}


@app.post("/fail")
def fail():
    """Always fails, to show how a server error reaches the caller."""
    raise RuntimeError("scorer failed on purpose")

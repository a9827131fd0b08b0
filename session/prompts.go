package session

// DefaultConsolidatePrompt instructs the model to fold new conversation into
// a session's memory.
const DefaultConsolidatePrompt = `You maintain the long-term memory of one conversation thread.
You receive the thread's current memory (possibly empty) and the messages exchanged since it was last written.
Write the updated memory: a concise, self-contained summary that keeps every fact, decision, open question,
preference and commitment that a later reader needs to continue this thread without the transcript.
Merge the new messages into the existing memory rather than appending a log; drop small talk and repetition.
Write in the language of the conversation, as plain text or short bullet points, at most about 300 words.
Answer with the memory only, no preamble.`

// DefaultIntegratePrompt instructs the model to synthesise the children's
// memories and advise each child.
const DefaultIntegratePrompt = `You coordinate a tree of conversation threads that explore parts of one larger topic.
You receive the memory of each sub-thread, each introduced by its session id and label.
1. Write a synthesis: what the threads established together, where they agree or conflict, and what remains open.
2. For each sub-thread that would benefit, write one short insight: a concrete hint, connection to another thread,
   or correction that thread should take into account in its next turn.
Answer with a single JSON object and nothing else, shaped exactly like:
{"synthesis": "…", "insights": [{"sessionId": "<id from the input>", "content": "…"}]}
Use only session ids that appear in the input.`

// DefaultSummaryPrompt instructs the model to compress older history that no
// longer fits the context budget.
const DefaultSummaryPrompt = `Summarise the earlier part of a conversation so it can replace the transcript in the model's context.
Keep facts, decisions, names, numbers, open questions and what each side asked for; drop pleasantries.
If a previous summary is given, fold it in. Answer with the summary only, as plain text.`

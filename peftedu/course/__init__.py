"""The course tools: what serves the lessons (tasks, training loop, evaluation, memory estimates, explorers,
shape walkthroughs, interview bank, showdown). They import the PEFT library in ``peftedu/``; it never imports them."""

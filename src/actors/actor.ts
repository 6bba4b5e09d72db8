/**
 * The mailbox primitive: messages are handled one at a time, in the order they were posted. A message
 * posted while another is being handled (from inside a handler, or by a callback it triggered) waits
 * its turn instead of re-entering, so a handler always sees the state the previous one left. An idle
 * mailbox handles a post at once, in the caller's stack: no microtask and no allocation on the path
 * one audio frame takes.
 */
export abstract class Actor<M> {
  private readonly mailbox: M[] = [];
  private busy = false;

  post(message: M): void {
    if (this.busy) {
      this.mailbox.push(message);
      return;
    }
    this.busy = true;
    try {
      this.handle(message);
      // Only what handling posted waits here: the common case (one message, idle box) never touches it.
      for (let i = 0; i < this.mailbox.length; i++) this.handle(this.mailbox[i]!);
    } finally {
      if (this.mailbox.length > 0) this.mailbox.length = 0;
      this.busy = false;
    }
  }

  private handle(message: M): void {
    try {
      this.receive(message);
    } catch (error) {
      this.failed(error, message);
    }
  }

  protected abstract receive(message: M): void;

  /** A handler threw: the actor decides what that means for it. It must not throw. */
  protected abstract failed(error: unknown, message: M): void;
}

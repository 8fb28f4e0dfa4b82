// A token bucket: `rate` tokens per second, holding at most `burst`.
export class TokenBucket {
  private tokens: number
  private last: number

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now()
  ) {
    this.tokens = burst
    this.last = now()
  }

  private refill(): void {
    const t = this.now()
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.rate)
    this.last = t
  }

  /** Takes `n` tokens if there are enough; false (and nothing taken) otherwise. */
  take(n: number): boolean {
    this.refill()
    if (n > this.tokens) return false
    this.tokens -= n
    return true
  }

  /** Milliseconds until `n` tokens are available (Infinity if n exceeds the burst). */
  msUntil(n: number): number {
    this.refill()
    if (n > this.burst) return Number.POSITIVE_INFINITY
    return n <= this.tokens ? 0 : Math.ceil(((n - this.tokens) / this.rate) * 1000)
  }
}

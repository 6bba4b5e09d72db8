import { describe, expect, it } from 'vitest';
import { SessionBudget } from '../../src/streams/budget.ts';

describe('SessionBudget', () => {
  it('starts empty, with nothing held and nothing unsent upstream', () => {
    const budget = new SessionBudget(100);
    expect(budget.limit).toBe(100);
    expect(budget.held).toBe(0);
    expect(budget.upstreamBytes()).toBe(0);
    expect(budget.used).toBe(0);
  });

  it('holds what is taken until it is given back', () => {
    const budget = new SessionBudget(100);
    budget.take(30);
    budget.take(12);
    expect(budget.held).toBe(42);
    expect(budget.used).toBe(42);
    budget.give(30);
    expect(budget.held).toBe(12);
    budget.give(12);
    expect(budget.held).toBe(0);
    expect(budget.used).toBe(0);
  });

  it('counts as used what it holds plus what the upstream socket has not yet written, read live', () => {
    const budget = new SessionBudget(100);
    let unsent = 25;
    budget.upstreamBytes = () => unsent;
    budget.take(10);
    expect(budget.used).toBe(35);
    // Read at each look, not copied when set: the upstream socket keeps that count itself.
    unsent = 70;
    expect(budget.used).toBe(80);
    unsent = 0;
    expect(budget.used).toBe(10);
    // The upstream's bytes are never taken or given: held is the client side's alone.
    expect(budget.held).toBe(10);
  });

  it('counts an upstream that alone is over the limit as over, with nothing held', () => {
    const budget = new SessionBudget(100);
    budget.upstreamBytes = () => 150;
    expect(budget.used).toBe(150);
    expect(budget.used > budget.limit).toBe(true);
    expect(budget.held).toBe(0);
  });
});
